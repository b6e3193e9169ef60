"""The transaction Bundle one message becomes (https://hl7.org/fhir/R4B/http.html#transaction).

Every resource carries a business identifier built from the message's own keys, under a system
that names the sender, and is written with a conditional update on it
(https://hl7.org/fhir/R4B/http.html#cond-update): a re-sent message changes nothing and a
corrected result replaces the earlier one. A patient seen only in results or immunizations is a
conditional create, so a sparse PID never overwrites the demographics an ADT sent.
"""
from __future__ import annotations

import uuid
from typing import Any

from healthhub.ingest.normalize import SenderProfile, search_token


def sender_system(sender: SenderProfile, kind: str) -> str:
    """``urn:healthhub:sender:<code>:<kind>``: a system only this sender's keys live in."""
    return sender.system(kind)


def criteria(system: str, value: str) -> str:
    """``identifier=<system>|<value>``, FHIR-escaped and URL-encoded (the ``|`` kept readable):
    a value holding ``,`` is one identifier, not two alternatives."""
    return f"identifier={search_token(system, value)}"


class BundleBuilder:
    """Collects the entries of one transaction Bundle."""

    def __init__(self, sender: SenderProfile) -> None:
        self.sender = sender
        self.entries: list[dict[str, Any]] = []
        self._keys: set[tuple[str, str, str]] = set()

    def add(self, resource: dict[str, Any], request: dict[str, Any]) -> str:
        """Append an entry; return its ``urn:uuid:`` fullUrl, the reference to use for it."""
        full_url = f"urn:uuid:{uuid.uuid4()}"
        self.entries.append({"fullUrl": full_url, "resource": resource, "request": request})
        return full_url

    def keyed(self, resource: dict[str, Any], kind: str, value: str) -> str:
        """Give ``resource`` the business identifier ``value`` in the sender's ``kind`` system
        (made unique within this Bundle by a numeric suffix) and write it with
        ``PUT <Type>?identifier=…``."""
        system = sender_system(self.sender, kind)
        rtype = resource["resourceType"]
        unique, n = value, 1
        while (rtype, system, unique) in self._keys:
            n += 1
            unique = f"{value}#{n}"
        self._keys.add((rtype, system, unique))
        resource.setdefault("identifier", []).insert(0, {"system": system, "value": unique})
        return self.put(resource, system, unique)

    def put(self, resource: dict[str, Any], system: str, value: str, extra: str = "") -> str:
        """Conditional update on one identifier (``extra``: more criteria, ``&name=value``)."""
        url = f"{resource['resourceType']}?{criteria(system, value)}{extra}"
        return self.add(resource, {"method": "PUT", "url": url})

    def create(self, resource: dict[str, Any], system: str | None = None, value: str | None = None,
               extra: str = "") -> str:
        """POST, conditional on the identifier when one is given (``ifNoneExist``)."""
        request: dict[str, Any] = {"method": "POST", "url": resource["resourceType"]}
        if system and value:
            request["ifNoneExist"] = criteria(system, value) + extra
        return self.add(resource, request)

    def bundle(self) -> dict[str, Any]:
        """The transaction Bundle."""
        return {"resourceType": "Bundle", "type": "transaction", "entry": self.entries}
