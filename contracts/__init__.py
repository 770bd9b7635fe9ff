"""What every layer of the platform shares, free of torch, Ray and Prefect (and of every other project package).

- :mod:`contracts.manifest`: ``manifest.json``, the contract between a job's outputs and whatever records them, as a
  typed :class:`~contracts.manifest.Manifest`; per-file digests and their verification; the code version.
- :mod:`contracts.publish`: staging and publishing a job's output behind one small interface
  (:class:`~contracts.publish.Publisher`): a reader sees no output or a whole one, with its manifest written last.
- :mod:`contracts.storage`: locations that are local paths or object-store URIs, read and written alike.
- :mod:`contracts.mirror`: verified local copies of committed object-store outputs, for readers that need files.
- :mod:`contracts.digests`: content digests of files, trees, rows and JSON-able settings.
- :mod:`contracts.reasons`: the stable vocabulary of curation decisions and reasons, and row accounting.
- :mod:`contracts.redact`: removing credentials from everything the platform writes down.
- :mod:`contracts.gate`: the promotion gate's rules (against production, and against the teacher's sampler).
- :mod:`contracts.report`: the eval report's tables.
- :mod:`contracts.evalset`: a prompt set for evaluation, as its producer writes and the evaluation job reads it.
"""
