"""r1v-example-plugin: a template for third-party r1v plugins (see README.md)."""

__version__ = "0.1.0"
