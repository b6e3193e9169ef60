"""The master patient index: links the Patient records of one person kept by several hospitals.

No golden record: each hospital's Patient stays as it was sent; the records of one person are
linked to each other (``Patient.link`` ``seealso``, or ``replaces``/``replaced-by`` after a
merge) and ``mpi_persons`` names their person.

- :mod:`.index` — ``update(session, patient_ids, *, now)``, called once per unit of work with the
  Patients it wrote: blocking keys, candidates, scores (``ingest/matching.py``), links and reviews;
  ``candidates(…)`` for ``Patient/$match``.
- :mod:`.linkage` — ``link``, ``unlink``, ``reject``, ``merge`` (HL7 ADT^A40): ``mpi_links``,
  the persons (a materialised union-find), ``mpi_reviews`` and ``Patient.link`` on both records.
- :mod:`.person` — ``person_ids(patient_id)``: the SQL of a person's records (compartments,
  ``$everything`` and ``patient/`` scopes follow it).
- :mod:`.links` — the MPI's ``Patient.link`` entries, kept through hospitals' updates.
- :mod:`.cli` — ``healthhub mpi reviews|link|reject|unlink``.
"""
