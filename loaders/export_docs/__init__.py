"""ASAPP's export_docs.yaml: parse it, generate the dbt layer from it, diff two versions of it."""

from loaders.export_docs.model import Column, ExportDocs, Feed, load_export_docs

__all__ = ["Column", "ExportDocs", "Feed", "load_export_docs"]
