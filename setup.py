from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
about: dict[str, str] = {}
exec((HERE / "resilient_client" / "_version.py").read_text(), about)

EXTRAS = {
    "yaml": ["PyYAML>=6"],
    "redis": ["redis>=4.5"],
    # AsyncResilientClient, the httpx front (anyio comes with httpx).
    "httpx": ["httpx>=0.27", "anyio>=4"],
    "prometheus": ["prometheus-client>=0.17"],
    "otel": ["opentelemetry-api>=1.20"],
    "toml": ['tomli>=2; python_version < "3.11"'],
    # resilient_client.testing: fake peers (responses) and the pytest fixtures.
    "testing": ["responses>=0.23", "pytest>=7"],
    # resilient-client demo --plot
    "plot": ["matplotlib>=3.5"],
    # benchmarks/: stamina is one of the clients compared (tenacity and pybreaker are deps).
    "bench": ["stamina>=24"],
    # resilient-client demo --fleet: gunicorn workers (haproxy and redis-server are
    # system packages), breaker state in Redis.
    "fleet": ["gunicorn>=21", "redis>=4.5"],
}
EXTRAS["test"] = [
    "pytest>=7",
    "responses>=0.23",
    "hypothesis>=6",
    *EXTRAS["yaml"],
    *EXTRAS["redis"],
    *EXTRAS["httpx"],
    # The async client's tests run on anyio's pytest plugin; the testing kit's
    # fixtures are also checked under pytest-asyncio.
    "pytest-asyncio>=0.23",
    *EXTRAS["prometheus"],
    *EXTRAS["otel"],
    # An in-memory meter provider and span exporter for the OpenTelemetry listeners' tests.
    "opentelemetry-sdk>=1.20",
    # tests/test_tracing.py: our spans beside requests' own instrumentation.
    "opentelemetry-instrumentation-requests>=0.41b0",
    # TOML config files on Python 3.10 (3.11+ has tomllib).
    *EXTRAS["toml"],
    # The benchmarks' smoke test.
    *EXTRAS["bench"],
    # The demo --fleet test (gunicorn workers).
    *EXTRAS["fleet"],
    # tests/test_host_gunicorn.py: state: host under gunicorn's gevent workers
    # (gunicorn's gevent worker wants 24.10.1 or later).
    "gevent>=24.10.1",
    # The test server's TLS flag (tests/peers.py): certificates from a throwaway CA.
    "trustme",
    # tests/test_adapters.py: adapters from the ecosystem keep the deadline.
    "cachecontrol>=0.13",
    "requests-toolbelt>=1.0",
]
# What tests/requests_suite/run.sh needs to run requests' own test suite
# (its requirements-dev.txt): httpbin on loopback, certificates, mocks, SOCKS.
EXTRAS["requests-suite"] = ["pytest-httpbin>=2.1", "httpbin>=0.10", "trustme", "pytest-mock", "PySocks"]
# What tests/httpx_suite/run.sh needs to run httpx's own AsyncClient tests
# (its requirements.txt): a uvicorn server on loopback, trio, and httpx's extras.
EXTRAS["httpx-suite"] = [*EXTRAS["httpx"], "uvicorn", "trio", "trustme", "h2", "socksio", "zstandard",
                         "chardet"]
# STYLE.md names the test extra `tests`; both spellings work.
EXTRAS["tests"] = EXTRAS["test"]
EXTRAS["lint"] = ["ruff>=0.5", "mypy>=1.10", "types-requests", "types-PyYAML"]
EXTRAS["docs"] = ["mkdocs>=1.5", "mkdocs-material>=9", "mkdocstrings[python]>=0.24"]
# .ci/release_check: build the sdist and the wheel, and check them as PyPI would.
EXTRAS["release"] = ["build>=1.0", "twine>=5"]
# Every optional runtime feature, without the developer tools.
EXTRAS["all"] = sorted(
    {
        d
        for k, v in EXTRAS.items()
        if k not in ("test", "tests", "lint", "docs", "bench", "requests-suite", "httpx-suite", "fleet",
                     "release")
        for d in v
    }
)

setup(
    name="resilient_client",
    version=about["__version__"],
    description="A drop-in requests.Session with mandatory timeouts, retries, "
    "circuit breakers, bulkheads and fallbacks per endpoint.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["resilient_client", "resilient_client.*"]),
    package_data={"resilient_client": ["py.typed"]},
    install_requires=[
        "requests>=2.31",
        "urllib3>=2.0",
        "pybreaker>=1.2",
        "tenacity>=8.3",
    ],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["resilient-client=resilient_client.tools._cli:main"],
        # The package resilient_client.testing is the plugin: its __init__
        # re-exports the fixtures of testing/_plugin.py. The entry point is
        # named as the module, so that `-p resilient_client.testing` and
        # `pytest_plugins = ["resilient_client.testing"]` find it already
        # registered instead of registering it twice (pytest refuses that).
        "pytest11": ["resilient_client.testing=resilient_client.testing"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Typing :: Typed",
        "Framework :: Pytest",
    ],
)
