"""Rendering of slurmft's Jinja2 templates (job wrapper, restart script, cluster and logging
configuration). The templates ship as package data in ``slurmft/templates``."""

from slurmft.render.templates import make_environment, packaged_templates, render, template_dirs

__all__ = ["make_environment", "packaged_templates", "render", "template_dirs"]
