"""Pipelines as a service: API keys, services, requests run on Ray, charges and
invoices over HTTP (``etl-actors serve``), all of it events in the log.

- :mod:`.keys`: API keys (``etl-actors keys``), stored as hashes;
- :mod:`.specs`: a ``$.Service.create`` body as a spec, with no literal secret;
- :mod:`.runner`: ``create_service``, ``create_request``, ``execute`` and the server's
  :class:`~.runner.Runner`;
- :mod:`.store`: the server's projection of the log; :mod:`.model`: services and
  requests as folds, and their views; :mod:`.status`: what is read on demand;
- :mod:`.app`: the aiohttp application and ``serve_command``; :mod:`.answers`: JSON
  answers and errors, and who asks.
"""
