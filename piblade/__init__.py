"""piblade: a Raspberry Pi cluster as a home NAS plus a job-processing blade."""

__version__ = "0.1.0"
