#!/usr/bin/env bash
# Runs a Kafka command-line tool from the jars that `make up` put in .stack/kafka/libs.
#
#   deploy/local/kafka-tool.sh <MainClass|alias> [args...]
#
# e.g. deploy/local/kafka-tool.sh org.apache.kafka.tools.BrokerApiVersionsCommand \
#          --bootstrap-server 127.0.0.1:9092
#      deploy/local/kafka-tool.sh topics --bootstrap-server 127.0.0.1:9092 --list
# Aliases (Kafka 4.x class names):
#   api-versions     org.apache.kafka.tools.BrokerApiVersionsCommand
#   topics           org.apache.kafka.tools.TopicCommand
#   consumer-groups  org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
#   producer-perf    org.apache.kafka.tools.ProducerPerformance
#   consumer-perf    org.apache.kafka.tools.ConsumerPerformance
#   console-producer org.apache.kafka.tools.ConsoleProducer
#   console-consumer org.apache.kafka.tools.consumer.ConsoleConsumer
#   get-offsets      org.apache.kafka.tools.GetOffsetShell
#   metadata-quorum  org.apache.kafka.tools.MetadataQuorumCommand
#   storage          kafka.tools.StorageTool
# Heap: KAFKA_TOOL_HEAP_OPTS (default -Xmx512m). Tool logging: warnings to stderr.
set -euo pipefail

# shellcheck source=deploy/local/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
  # the comment at the top of this file
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
  exit 2
fi
if [[ ! -f "$KAFKA_LIBS/.complete" ]]; then
  echo "kafka-tool.sh: no Kafka jars in $KAFKA_LIBS: run 'make up' first" >&2
  exit 2
fi

main=$1
shift
case "$main" in
  api-versions) main=org.apache.kafka.tools.BrokerApiVersionsCommand ;;
  topics) main=org.apache.kafka.tools.TopicCommand ;;
  consumer-groups) main=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
  producer-perf) main=org.apache.kafka.tools.ProducerPerformance ;;
  consumer-perf) main=org.apache.kafka.tools.ConsumerPerformance ;;
  console-producer) main=org.apache.kafka.tools.ConsoleProducer ;;
  console-consumer) main=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
  get-offsets) main=org.apache.kafka.tools.GetOffsetShell ;;
  metadata-quorum) main=org.apache.kafka.tools.MetadataQuorumCommand ;;
  storage) main=kafka.tools.StorageTool ;;
esac

kafka_java_cmd "${KAFKA_TOOL_HEAP_OPTS:--Xmx512m}" tools-log4j2.properties
exec "${KAFKA_JAVA[@]}" "$main" "$@"
