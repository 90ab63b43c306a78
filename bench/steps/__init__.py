"""The steps `python -m bench.run` (`make bench`) runs, in its order: the stages one by one,
the reference limits (Kafka's tools, COPY, Mosquitto), the peers, then the chain end to end."""
