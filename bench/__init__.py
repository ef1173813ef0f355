"""viperbench's runner, meters, records, reports and command line."""

__version__ = "0.1.0"
