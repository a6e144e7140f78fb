"""How a worker process takes and runs jobs: arq's ``Worker`` with SyncNode's wake-up, claim,
lease and drain (``worker.py``), and arq's ``run_job`` for a job the claim already read
(``runloop.py``). Nothing here knows a pool or a provider: ``workers/settings.py`` says what
each pool runs, ``workers/cli.py`` starts one. arq 0.28.0's internals are overridden here only;
``tests/test_worker_runloop.py`` pins their signatures."""
