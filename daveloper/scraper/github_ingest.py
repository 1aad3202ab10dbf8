"""GitHub ingestion jobs: a repository's README, docs, code by glob and issues, into the session's documents.

Each file or issue is reported like a crawled page (``page_fetched`` with its
``html_url``), counts against the session's daily page quota, and — when the
spec asks to ingest — becomes one document whose source is that URL. A file
that cannot be read is reported as ``page_failed`` and the job goes on; a
repository that cannot be read, or a rate limit too long to wait for, fails
the job (RESOURCE_EXHAUSTED with RetryInfo for the latter).
"""

from __future__ import annotations

from dataclasses import dataclass

from daveloper.errors import DaveloperError, InvalidArgument, ResourceExhausted
from daveloper.scraper.crawl import PageIngest
from daveloper.scraper.github import GitHubClient, Issue, TreeEntry, checked_ref, checked_repository
from daveloper.scraper.jobs import JobRun, Work
from daveloper.scraper.paths import docs_files, select_files
from generated.daveloper.v1 import GitHubIngestSpec, PageFetched

__all__ = ["GitHubIngest", "GitHubLimits", "issue_markdown"]


@dataclass(frozen=True, slots=True)
class GitHubLimits:
    default_max_files: int = 200
    max_files: int = 2000
    max_file_bytes: int = 1024 * 1024
    max_globs: int = 20
    #: Issues read when the spec asks for them (newest first).
    max_issues: int = 200


def issue_markdown(repository: str, issue: Issue) -> str:
    """An issue as a Markdown document: title, facts, then the body."""
    facts = [f"state: {issue.state}", f"author: {issue.author or 'unknown'}", f"comments: {issue.comments}",
             f"opened: {issue.created_at}"]
    if issue.labels:
        facts.append("labels: " + ", ".join(issue.labels))
    return f"# {repository}#{issue.number}: {issue.title}\n\n" + "\n".join(f"- {f}" for f in facts) + \
        f"\n\n{issue.body.strip() or '(no description)'}\n"


class GitHubIngest:
    """Validates GitHub ingestion specs and runs them; one per process."""

    def __init__(self, *, client: GitHubClient, ingest: PageIngest, limits: GitHubLimits) -> None:
        self.client = client
        self._ingest = ingest
        self.limits = limits

    def plan(self, spec: GitHubIngestSpec | None) -> GitHubIngestSpec:
        """A checked copy of ``spec``; nothing selected means README and docs."""
        spec = GitHubIngestSpec.parse(bytes(spec)) if spec is not None else GitHubIngestSpec()
        violations: dict[str, str] = {}
        try:
            checked_repository(spec.repository)
        except InvalidArgument:
            violations["spec.repository"] = "must be owner/name, e.g. python/cpython"
        if spec.max_files > self.limits.max_files:
            violations["spec.max_files"] = f"must be at most {self.limits.max_files}"
        if len(spec.code_globs) > self.limits.max_globs or any(not g.strip() or len(g) > 200 for g in spec.code_globs):
            violations["spec.code_globs"] = f"at most {self.limits.max_globs} non-empty globs of ≤ 200 characters"
        if spec.ref:
            # Checked here, before any API call spends the session's or the token's GitHub quota.
            try:
                checked_ref(spec.ref)
            except InvalidArgument as invalid:
                violations["spec.ref"] = invalid.violations[0][1]
        if violations:
            raise InvalidArgument("the GitHub ingestion spec is invalid", violations=violations)
        if not (spec.include_readme or spec.include_docs or spec.code_globs or spec.include_issues):
            spec.include_readme = spec.include_docs = True
        return spec

    def work(self, spec: GitHubIngestSpec) -> Work:
        return lambda run: self._run(run, spec)

    async def _run(self, run: JobRun, spec: GitHubIngestSpec) -> None:
        name = spec.repository
        repository = await self.client.repository(name)
        ref = spec.ref or repository.default_branch
        await run.log(f"{repository.full_name} at {ref}: {repository.description or 'no description'}")
        budget = spec.max_files or self.limits.default_max_files
        readme_path = ""
        if spec.include_readme and (readme := await self.client.readme(name, ref)) is not None:
            readme_path = readme.path
            budget -= 1
            await run.take_page()
            await self._report(run, spec, readme.html_url, readme.data, readme.path, 0)
        if spec.include_docs or spec.code_globs:
            tree = await self.client.tree(name, ref)
            if tree.truncated:
                await run.log("GitHub truncated the file tree; some files are missing", "WARNING")
            entries: dict[str, TreeEntry] = {}
            if spec.include_docs:
                entries.update((e.path, e) for e in docs_files(tree.entries, max_size=self.limits.max_file_bytes))
            if spec.code_globs:
                entries.update((e.path, e) for e in select_files(tree.entries, list(spec.code_globs),
                                                                 max_size=self.limits.max_file_bytes))
            entries.pop(readme_path, None)
            selected = sorted(entries)
            run.stats.pages_queued += len(selected[:max(budget, 0)])
            if len(selected) > budget:
                await run.log(f"{len(selected)} files match; reading the first {max(budget, 0)}", "WARNING")
            for path in selected[:max(budget, 0)]:
                await run.take_page()
                url = f"{repository.html_url}/blob/{ref}/{path}"
                try:
                    file = await self.client.file(name, path, ref, max_size=self.limits.max_file_bytes)
                except DaveloperError as exc:
                    if isinstance(exc, ResourceExhausted) and exc.reason != "GITHUB_FILE_TOO_LARGE":
                        raise  # a rate limit: the rest of the files would fail the same way
                    await run.failed(url, exc)
                    continue
                await self._report(run, spec, file.html_url or url, file.data, path, 1)
        if spec.include_issues:
            async for issue in self.client.issues(name, limit=self.limits.max_issues):
                await run.take_page()
                text = issue_markdown(repository.full_name, issue).encode()
                await self._report(run, spec, issue.html_url, text, f"issue-{issue.number}.md", 1,
                                   title=f"#{issue.number} {issue.title}")
        await run.progress(force=True)

    async def _report(self, run: JobRun, spec: GitHubIngestSpec, url: str, data: bytes, path: str, depth: int,
                      *, title: str = "") -> None:
        document_id = ""
        name = f"{spec.repository}/{path}"
        if spec.ingest:
            try:
                document = await self._ingest(run.session_id, data, name.rsplit("/", 1)[-1], "", url,
                                              {"source": "github", "repository": spec.repository, "path": path})
            except DaveloperError as exc:
                await run.log(f"{path}: not ingested: {exc.message}", "WARNING")
            else:
                document_id = document.id
        await run.fetched(PageFetched(url=url, http_status=200, size_bytes=len(data), title=title or path,
                                      depth=depth, document_id=document_id))
