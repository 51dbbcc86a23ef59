"""How a run behaves: every option of `batcher run` and `retry` declared once (`RunSettings`: its
flag, help, default and bounds; the cli makes its click options from them), and the small value
objects a run reads (what it may spend and keep in flight, how it polls and retries, where it
saves videos), whose defaults are the declared ones. `RunOptions.of` takes the flat names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..defaults import DEFAULT_LEDGER
from ..errors import UsageError
from ..money import budget as budget_credits
from ..outputs import OUTPUTS
from ..plan import MAX_JOBS
from ..policy import DEFAULT_MIN_DOWNLOAD_RATE, DEFAULT_REQUEST_DEADLINE, Deadlines, RetryPolicy

if TYPE_CHECKING:  # the command line reads the declarations: it loads neither httpx nor a store
    from ..outputs.bucket import BucketOutputs
    from ..references import ReferenceStore
    from .webhooks import Webhooks

MB = 1024 * 1024  # --max-download-mb counts these


@dataclass(frozen=True)
class Flag:
    """How a run option is given on the command line. With the field's type and default it makes
    the click option: a bool is an on/off flag, a Decimal exact credits, a number held to
    [least, most]."""

    names: tuple[str, ...]  # e.g. ("--concurrency", "-c")
    help: str
    least: float | None = None
    most: float | None = None
    least_open: bool = False  # the least value itself is refused
    finite: bool = False  # NaN and infinity refused (a range lets them through)
    show_default: bool = False
    metavar: str | None = None
    envvar: str | None = None
    path: Literal["file", "folder"] | None = None
    only: str | None = None  # the one command that takes it (None: both `run` and `retry`)


def option(default: Any, *names: str, help: str, **how: Any) -> Any:
    """A run option's field: its default, and how the command line gives it (see Flag)."""
    return field(default=default, metadata={"flag": Flag(names, help, **how)})


def flag_of(f: Field[Any]) -> Flag | None:
    """How the command line gives this field; None for the options every command shares (the
    ledger, --rate, --max-jobs and the reference store: the cli declares those once for all)."""
    flag = f.metadata.get("flag")
    return flag if isinstance(flag, Flag) else None


@dataclass(frozen=True)
class RunSettings:
    """Everything `batcher run` and `retry` take, one field per option in the order `--help` lists
    them, each value as the command line gives it."""

    ledger_path: str = DEFAULT_LEDGER
    out_dir: str | None = option(None, "--out", path="folder",
                                 help="Folder for the videos (default: ./outputs/<batch>/), or s3://BUCKET/PREFIX: a "
                                      "bucket you own (credentials and endpoint as for the reference store).")
    concurrency: int = option(4, "--concurrency", "-c", least=1, most=1000, show_default=True,
                              help="Most jobs in flight at the API at once.")
    budget: Decimal | None = option(  # noqa: RUF009 - a field declaration, as field() is
        None, "--budget", help="Most credits this batch may spend, counted across reruns.")
    api_base: str | None = option(None, "--api-base", envvar="PIXELDOJO_API_BASE",
                                  help="API base URL (or PIXELDOJO_API_BASE); default https://pixeldojo.ai.")
    simulate: bool = option(False, "--simulate", help="Run against the built-in simulator: no network, no key. "
                            "Its batches live in batcher-sim.db and outputs/simulated/ (unless --ledger or "
                            "--out is given), apart from real ones.")
    sim_render_seconds: float = option(0.5, "--sim-render-seconds", least=0, show_default=True,
                                       help="With --simulate: mean render time.")
    sim_fail_rate: float = option(0.0, "--sim-fail-rate", least=0, most=1,
                                  help="With --simulate: share of renders that fail (refunded).")
    max_attempts: int = option(2, "--max-attempts", least=1, show_default=True,
                               help="Submissions per job when renders fail remotely (failures are refunded).")
    job_timeout: float | None = option(
        None, "--job-timeout", least=0,
        help="Seconds after which a job stops being polled in this run (the next run polls it).")
    expected_render: float | None = option(
        None, "--expected-render", least=0.01,
        help="Render time to assume before any has been observed (first polls); default: each model's typical "
             "render time, or what earlier batches measured.")
    max_download_mb: int = option(
        2048, "--max-download-mb", least=1, show_default=True,
        help="A video larger than this is not downloaded: its job stays rendered, and a rerun with a higher cap "
             "downloads it.")
    verify: Literal["quick", "full"] = option(
        "quick", "--verify", show_default=True,
        help="How a rerun finds its completed clips again: quick (each file's size and modification time; a "
             "bucket's sizes in one listing) or full (every file hashed again, every object's recorded hash read).")
    rates: tuple[str, ...] = ()
    report_path: str | None = option(None, "--report", path="file",
                                     help="Write the HTML gallery here at the end, and print its path.")
    rpm: float | None = option(None, "--rpm", least=1,
                               help="Most API requests per minute, all calls together (adapts to 429s).")
    max_jobs: int = MAX_JOBS
    reference_store: str | None = None
    reference_endpoint: str | None = None
    reference_public_url: str | None = None
    reference_url_lifetime: str | None = None
    # How long a run waits for others (the API, its output hosts, other runners, the ledger).
    max_retry_after: float = option(  # (the client's DEFAULT_MAX_RETRY_AFTER, for a client outside a run)
        300.0, "--max-retry-after", least=0, show_default=True,
        help="Longest pause a 429's Retry-After may impose, in seconds (a longer one is capped).")
    request_deadline: float = option(
        DEFAULT_REQUEST_DEADLINE, "--request-deadline", least=0, least_open=True, show_default=True,
        help="Seconds a whole API answer (status, submission) may take, however it trickles in; a submission past "
             "it is held as unknown, a poll is retried. Also a download's least.")
    min_download_rate: float = option(
        DEFAULT_MIN_DOWNLOAD_RATE, "--min-download-rate", least=0, least_open=True, show_default=True,
        help="KB/s: past --request-deadline, a download must keep up this rate on the bytes that have arrived; a "
             "slower one is cut and retried.")
    lease_seconds: float = option(
        60.0, "--lease-seconds", least=1, show_default=True,
        help="How long a claimed job stays this runner's without a renewal (several runners).")
    ledger_patience: float = option(
        300.0, "--ledger-patience", least=0, most=86_400, finite=True, show_default=True, metavar="SECONDS",
        help="How long a failing ledger (locked, unreachable) is waited for before what the API did is kept in "
             "the answer journal beside it and the run stops.")
    webhook_listen: str | None = option(
        None, "--webhook-listen", metavar="HOST:PORT",
        help="Listen here for the API's webhooks: each job's end pokes its runner, which then asks the API at once "
             "(polls go on, sparser, as a safety net). Port 0 picks a free one.")
    webhook_url: str | None = option(
        None, "--webhook-url", metavar="URL",
        help="The public base URL that reaches --webhook-listen (a reverse proxy or tunnel); each job's URL adds "
             "its key and a secret token. Default: the listen address itself.")
    no_preflight: bool = option(False, "--no-preflight",
                                help="Skip checking every reference URL before spending (not advised).")
    as_json: bool = option(False, "--json",
                           help="Print the end summary as a JSON object on stdout (progress stays on stderr).")
    verbose: bool = option(False, "-v", "--verbose", help="Log each request and state change to stderr.")
    log_json: str | None = option(None, "--log-json", path="file",
                                  help="Write the same log as JSON lines to this file.")
    resubmit_unknown: bool = option(
        False, "--resubmit-unknown", only="run",
        help="Resubmit jobs whose earlier submission had an unknown outcome (may pay twice).")
    requeue: tuple[str, ...] = ()  # the states `retry` requeues (its --unknown, --failed, --expired)

    def run_options(self, *, out_dir: Path, expected_render: float | None, **services: Any) -> RunOptions:
        """The options of the run these settings ask for: every declared option RunOptions has by
        name (not the shared ones: --reference-store names a bucket, not a store), the download cap
        in bytes, preflight unless refused; `out_dir` and `expected_render` as the steps before the
        run decided them, and the run's `services` (webhooks, on_warning...)."""
        names = RunOptions.owners().keys() - {"out_dir", "expected_render", *services}
        given = {f.name: getattr(self, f.name) for f in fields(self) if flag_of(f) and f.name in names}
        return RunOptions.of(**given, out_dir=out_dir, expected_render=expected_render,
                             max_download_bytes=self.max_download_mb * MB, preflight=not self.no_preflight,
                             **services)


def declared(name: str) -> Any:
    """The default a run option is declared with (RunSettings)."""
    return next(f.default for f in fields(RunSettings) if f.name == name)


@dataclass(frozen=True)
class Limits:
    """What a run may spend and keep in flight."""

    concurrency: int = declared("concurrency")  # jobs in flight at the API
    # The most the batch may have committed when this runner submits: exact credits (a number
    # given is made exact here; NaN, infinity or a negative budget is refused, UsageError).
    budget: Decimal | None = declared("budget")  # noqa: RUF009 - None, the declared default
    rpm: float | None = declared("rpm")  # client-side request-rate limit, all API calls together
    max_attempts: int = declared("max_attempts")  # submissions per job while remote failures are refunded
    lease_seconds: float = declared("lease_seconds")  # how long a claimed job stays ours without a renewal
    # seconds a failing ledger is waited for before answers go to its journal
    ledger_patience: float = declared("ledger_patience")

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", budget_credits(self.budget, "budget"))


@dataclass(frozen=True)
class Polling:
    """How jobs are polled, and requests bounded in time and retried."""

    # First poll guess before anything is learned; None: each model's typical render time.
    expected_render: float | None = declared("expected_render")
    job_timeout: float | None = declared("job_timeout")  # stop polling a job in this run after this long
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # polls and downloads
    submit_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(base=1.0, cap=30.0, max_attempts=6))
    max_retry_after: float = declared("max_retry_after")  # the longest Retry-After honoured as it is
    request_deadline: float = declared("request_deadline")  # seconds for a whole API answer (and a download's least)
    min_download_rate: float = declared("min_download_rate")  # KB/s: a download slower than this (past the above) fails

    @property
    def deadlines(self) -> Deadlines:
        """Every request's overall deadline, for the client."""
        return Deadlines(self.request_deadline, self.min_download_rate)

    def __post_init__(self) -> None:
        if (problem := self.deadlines.check()) is not None:  # NaN passes a plain range check
            raise UsageError(problem)


@dataclass(frozen=True)
class Saving:
    """Where and how videos are saved."""

    out_dir: Path = OUTPUTS
    out_store: BucketOutputs | None = None  # the output store: clips go to this bucket, not to out_dir
    verify_full: bool = False  # a rerun hashes every completed clip again (else: sizes and times)
    downloads: int = 8  # downloads at once
    max_download_bytes: int = declared("max_download_mb") * MB


@dataclass
class RunOptions:
    """How a run behaves."""

    limits: Limits = field(default_factory=Limits)
    polling: Polling = field(default_factory=Polling)
    saving: Saving = field(default_factory=Saving)
    resubmit_unknown: bool = declared("resubmit_unknown")  # the user's consent to pay twice for held jobs
    check_schema: bool = True  # hold the batch against the live schema before spending
    preflight: bool = not declared("no_preflight")  # check every reference URL before spending (see batcher.preflight)
    on_warning: Callable[[str], None] | None = None  # what to tell before spending (default: the log)
    reference_store: ReferenceStore | None = None  # where local reference images are uploaded
    webhooks: Webhooks | None = None  # ask the API to poke each job's end (--webhook-listen, --webhook-url)
    progress_interval: float = 1.0
    handle_signals: bool = False
    seed: int | None = None

    @classmethod
    def owners(cls) -> dict[str, str]:
        """Each flat name `of` takes, and the group that keeps it ("" for RunOptions itself)."""
        groups = {"limits": Limits, "polling": Polling, "saving": Saving}
        return {**{f.name: "" for f in fields(cls) if f.name not in groups},
                **{f.name: group for group, kind in groups.items() for f in fields(kind)}}

    @classmethod
    def of(cls, **options: Any) -> RunOptions:
        """Options by their flat names (as the CLI has them): `RunOptions.of(concurrency=8, budget=500)`."""
        by_group: dict[str, dict[str, Any]] = {"": {}, "limits": {}, "polling": {}, "saving": {}}
        owners = cls.owners()
        for name, value in options.items():
            if name not in owners:
                raise TypeError(f"RunOptions has no option {name!r}")
            by_group[owners[name]][name] = value
        return cls(Limits(**by_group["limits"]), Polling(**by_group["polling"]), Saving(**by_group["saving"]),
                   **by_group[""])
