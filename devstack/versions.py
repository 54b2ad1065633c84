"""Pinned versions of everything the local dev stack downloads: change them here and only here."""

from typing import Final

#: Apache Kafka broker, as published on Maven Central (``org.apache.kafka:kafka_2.13``).
KAFKA_VERSION: Final = "4.1.1"
#: Scala binary version in the broker artifact id.
KAFKA_SCALA_VERSION: Final = "2.13"
#: log4j2 backend for the broker: its POM brings slf4j-api but no logging backend.
LOG4J2_VERSION: Final = "2.25.3"
#: SLF4J API 2.x, the version log4j 2.25.3 is built against. Kafka's POM asks for slf4j-api 1.7.36,
#: which cannot see the log4j-slf4j2-impl provider (the broker would log nothing); declaring 2.x
#: directly makes Maven's nearest-wins rule pick it, and Kafka runs fine on the 2.x API.
SLF4J_VERSION: Final = "2.0.17"
#: maven-dependency-plugin used to copy the jars; pinned so the fetch is reproducible.
MAVEN_DEPENDENCY_PLUGIN_VERSION: Final = "3.8.1"

#: (groupId, artifactId, version) of the artifacts whose runtime closure is the broker class path.
KAFKA_ARTIFACTS: Final[tuple[tuple[str, str, str], ...]] = (
    ("org.apache.kafka", f"kafka_{KAFKA_SCALA_VERSION}", KAFKA_VERSION),
    ("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J2_VERSION),
    ("org.apache.logging.log4j", "log4j-core", LOG4J2_VERSION),
    ("org.slf4j", "slf4j-api", SLF4J_VERSION),
)
