"""The scraper: crawl jobs and GitHub ingestion, fetched safely and recorded on the event log.

:mod:`.safety` decides which destinations may be fetched, :mod:`.fetcher` fetches
politely within limits, :mod:`.robots` and :mod:`.extract` read what comes back,
:mod:`.crawl` and :mod:`.github_ingest` are the two kinds of job, and
:mod:`.jobs` gives every job its durable record, limits and life cycle.
"""
