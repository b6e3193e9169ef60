"""Ingest: files and messages in, FHIR resources stored."""
