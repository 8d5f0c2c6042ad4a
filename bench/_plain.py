"""Plain functions for the `rq worker` side of the benchmarks (what a user would write without piblade)."""


def noop(i: int = 0) -> None:
    return None


def mandelbrot_600x400() -> int:
    """The same kernel and size as piblade's one-tile mandelbrot, called the plain way."""
    from jobs.kernels.mandelbrot import render_tile_counts

    return int(render_tile_counts(0, 0, 600, 400, 600, 400, -2.0, 1.0, -1.0, 1.0, 200).sum())
