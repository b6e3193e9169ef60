"""Rebuild ``fhir/search-parameters.json`` and ``fhir/CompartmentDefinition-patient.json`` from
the official FHIR R4B core package (``hl7.fhir.r4b.core``, CC0-1.0, published on npmjs.org).

    .venv/bin/python scripts/update_fhir_definitions.py [--package hl7.fhir.r4b.core-4.3.0.tgz]

Without ``--package`` it runs ``npm pack hl7.fhir.r4b.core@4.3.0`` in a temporary folder (needs
npm and the registry; the server and the tests never download anything: the output is committed).
The package holds one ``SearchParameter-*.json`` per definition; they are written as one
``collection`` Bundle, sorted by URL, the shape of the specification's ``search-parameters.json``.
Run ``healthhub search reindex`` on existing databases after changing the definitions.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "hl7.fhir.r4b.core@4.3.0"
FHIR_DIR = Path(__file__).resolve().parent.parent / "fhir"


def members(tgz: Path) -> dict[str, dict]:
    """File name → JSON of the package's ``package/*.json`` definitions we use."""
    out = {}
    with tarfile.open(tgz) as tar:
        for m in tar.getmembers():
            name = Path(m.name).name
            if name.startswith("SearchParameter-example"):
                # The specification's example SearchParameters (``example`` on _id,
                # ``example-reference`` on Condition.subject, ``example-extension``): instances that
                # illustrate the resource, not definitions; loaded, they replaced the real
                # Condition ``subject`` (targets: Organization only) and ``_id``.
                continue
            if m.isfile() and (name.startswith("SearchParameter-") or name == "CompartmentDefinition-patient.json"
                               or name == "package.json"):
                f = tar.extractfile(m)
                assert f is not None
                out[name] = json.load(f)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", type=Path, help="the .tgz of hl7.fhir.r4b.core (default: npm pack it)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tgz = args.package
        if tgz is None:
            subprocess.run(["npm", "pack", PACKAGE], cwd=tmp, check=True, capture_output=True)
            tgz = next(Path(tmp).glob("*.tgz"))
        files = members(tgz)
    meta = files.pop("package.json")
    compartment = files.pop("CompartmentDefinition-patient.json")
    params = sorted((r for r in files.values() if r.get("resourceType") == "SearchParameter"), key=lambda r: r["url"])
    bundle = {
        "resourceType": "Bundle", "id": "searchParams", "type": "collection",
        "meta": {"lastUpdated": params[0].get("meta", {}).get("lastUpdated", "2022-05-28T12:47:40+10:00"),
                 "source": f"{meta['name']}#{meta['version']}"},
        "entry": [{"fullUrl": r["url"], "resource": r} for r in params],
    }
    (FHIR_DIR / "search-parameters.json").write_text(json.dumps(bundle, indent=1, ensure_ascii=False) + "\n")
    (FHIR_DIR / "CompartmentDefinition-patient.json").write_text(
        json.dumps(compartment, indent=2, ensure_ascii=False) + "\n")
    print(f"{len(params)} SearchParameters and the Patient CompartmentDefinition from "
          f"{meta['name']} {meta['version']} ({meta.get('license')}) written to {FHIR_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
