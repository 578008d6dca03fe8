"""A drill against a running deployment: steady load from many sessions while the cache fails over
and the pods are replaced, then every acknowledged save checked on its session's page.

    python -m ops.drill --url http://HOST [--failover REPLICATION_GROUP] [--rollout]

The load comes from Locust, used as a library (``ops.drill.load``): the load tool Python's
ecosystem knows, whose users are plain Python, so each keeps its own cookie jar, reads the page's
CSRF token and save id, and resubmits a failed save the way a browser's user does; its request
event gives every answer's status, latency and ``X-Served-By``. wrk, k6 and vegeta measure
throughput well but cannot follow a session's forms, and none installs from PyPI. Locust runs on
gevent and monkey-patches the standard library when imported, so only ``load`` imports it, and
``__main__`` imports ``load`` before anything that opens a socket; the records, the report and
the disruptions import no Locust and are tested on their own. The drill reads pages with
``ops.page`` and never imports the app.

Modules: ``records`` (what happened, and the check of the saves), ``disruptions`` (ElastiCache's
TestFailover through boto3, ``kubectl rollout restart``), ``load`` (the Locust users), ``report``
(the text an operator pastes into an incident review), ``__main__`` (the command).
"""
