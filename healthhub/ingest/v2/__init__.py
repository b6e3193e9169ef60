"""HL7 v2 → FHIR R4B mapping, following the HL7 v2-to-FHIR IG (https://build.fhir.org/ig/HL7/v2-to-fhir/).

The public entry points live in :mod:`healthhub.ingest.hl7v2`; this package holds the types
(:mod:`.model`), the data-type maps (:mod:`.datatypes`), the transaction Bundle builder
(:mod:`.bundle`) and one module per segment family.
"""
