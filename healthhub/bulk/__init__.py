"""FHIR Bulk Data export (Bulk Data Access 2.0, https://hl7.org/fhir/uv/bulkdata/export.html):
jobs kept in the database, run by a worker outside the request, written as NDJSON files."""
