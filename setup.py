"""Packaging for nudgeflow: the job, its UDFs, the Avro contracts, the model and the local stack.

The design card fixes the top-level folders (jobs/, udfs/, schemas/, models/, infra/), so they
install as top-level packages; ``flink run -pyfs jobs,udfs,schemas,models`` ships the same
folders to a cluster.
"""

from setuptools import find_packages, setup

# Pinned so that a fresh clone resolves the combination that was tested. apache-flink 2.2.1 is
# pinned (not 2.3.x) because the Flink Kafka connector's newest release, 5.0.0-2.2, is built for
# Flink 2.2; see infra/jars/flink/pom.xml.
INSTALL_REQUIRES = [
    "apache-flink==2.2.1",
    "kafka-python==3.0.12",
    # the reference sender's consumer group (cooperative-sticky rebalancing; jobs/sender/):
    # librdkafka, whose group protocol settles where kafka-python 3.0.12's did not
    # with its schema registry client: the Confluent wire format option (jobs/schema_registry.py)
    "confluent-kafka[avro,schemaregistry]==2.16.1",
    "cassandra-driver==3.30.1",
    "redis==8.1.0",
    # redis-py's C reply parser and command packer: the membership writer's pipelines cost the
    # store clients' process ~30% less CPU per change with it (docs/performance.md)
    "hiredis==3.5.0",
    "onnxruntime==1.32.0",
    # reads the churn model's trees to score them with numpy (udfs/tree_ensemble.py)
    "onnx==1.22.0",
    "avro==1.12.2",
    "fastavro==1.13.1",
    "PyYAML==6.0.3",
    # the sender's delivery KPIs on --metrics-port (jobs/sender/kpis.py)
    "prometheus-client==0.26.0",
    # the engine's spans over OTLP/HTTP (udfs/spans.py; only with --tracing-otlp-endpoint).
    # 1.27.0: the newest whose protocol package accepts protobuf 4, which apache-beam (under
    # apache-flink) holds below 4.26
    "opentelemetry-sdk==1.27.0",
    "opentelemetry-exporter-otlp-proto-http==1.27.0",
    # mypyc_attr: a compiled base class that interpreted classes may subclass
    # (udfs/definitions/versioning.py); a no-op without the compiled modules
    "mypy_extensions==1.2.0",
]

# Not needed to run the job, so not in the image (infra/docker/Dockerfile installs
# INSTALL_REQUIRES only): `pip install nudgeflow[bench]` where the benchmark runs or pictures are
# drawn.
BENCH_REQUIRES = [
    # the benchmark report's plot (jobs/bench/report.py), `report --out` and `journeys show`
    # (Agg backend: no display needed)
    "matplotlib==3.11.2",
    # the benchmark's cost per stage: samples the job's embedded Python (jobs/bench/bench.py)
    "py-spy==0.4.3",
]

DEV_REQUIRES = [
    *BENCH_REQUIRES,
    # training the churn model (models/train_churn.py)
    "scikit-learn==1.9.1",
    "skl2onnx==1.20.0",
    "pytest==9.2.0",
    "pytest-timeout==2.4.0",
    # test certificate authorities for the stores' and Kafka's TLS settings
    "trustme==1.2.1",
    "ruff==0.17.6",
    "mypy==2.4.1",
    "types-PyYAML",
]

setup(
    name="nudgeflow",
    version="0.1.0",
    description="Real-time segments, churn scoring and priority-tagged campaign triggers on Flink",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["jobs*", "udfs*", "schemas*", "models*", "infra*"]),
    package_data={
        "schemas": ["*.avsc", "history/*.avsc", "README.md"],
        "infra": ["*.yaml", "cql/*.cql", "jars/*/pom.xml",
                  "jars/*/src/main/java/io/nudgeflow/*/*.java"],
        "models": ["*.onnx", "*.json", "*.md"],
        "jobs": ["profiles/*.yaml"],
        "udfs.catalog": ["*.yaml", "segments/*.yaml", "campaigns/*.yaml", "journeys/*.yaml"],
        "udfs.features": ["*.md"],
        "udfs.segments": ["*.md"],
        "udfs.campaigns": ["*.md"],
        "udfs.journeys": ["*.md"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require={"bench": BENCH_REQUIRES, "dev": DEV_REQUIRES},
    entry_points={"console_scripts": ["nudgeflow = jobs.cli.main:main"]},
)
