"""FHIR search: parameters as data (registry), typed index rows (indexer), query parsing and
compilation to one SQL statement. https://hl7.org/fhir/R4B/search.html"""
