"""Plain functions for the `rq worker` side of the benchmarks (what a user would write without piblade)."""


def noop(i: int = 0) -> None:
    return None


def mandelbrot_600x400() -> int:
    """The same kernel and size as piblade's one-tile mandelbrot, called the plain way."""
    from jobs.mandelbrot import render_tile

    return int(render_tile(0, 0, 600, 400, 600, 400, 200, -2.0, 1.0, -1.0, 1.0).sum())
