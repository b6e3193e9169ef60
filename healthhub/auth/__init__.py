"""Authorization: SMART on FHIR scopes, the OAuth2 server, token checks on every path."""
