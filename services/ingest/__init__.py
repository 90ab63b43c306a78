"""ingest: the pipeline's source; MQTT messages and HTTP bodies in, raw readings to Kafka.

It is not a consume -> step -> produce -> commit stage (libs/common/runner.py): it has no Kafka
input whose offsets it could commit, so it runs loops of its own. Where it does what the runner
does, it uses the runner's names and the same shared pieces:

- batch: the runner polls up to `max_records`, topped up for `batch_max_wait_ms` after the
  first records (`StageRunner._poll`). MQTT takes up to `max_records` (MQTT_MAX_RECORDS)
  within `batch_max_wait_ms` after the first (`MqttIngest._consume`, `MqttSession.take`); over
  HTTP one request's body is one batch.
- step: the runner's `Step` returns outputs and dead letters (`StepResult`). ingest's pure step
  is `intake.check_message` / `intake.split_body`: accepted `Outgoing` records and `Rejected`
  ones; their dead letters come from the one builder, `libs.common.models.dead_letter`.
- produce: the runner sends a batch's outputs and dead letters in one transaction. ingest
  sends them with `kafka.produce_all` (acks=all) in `Handover.send`, for both transports.
- commit only after the output is produced: the runner commits offsets in the same
  transaction. ingest sends the MQTT PUBACKs (`MqttIngest._hand_over`) or the HTTP 202 only
  once the batch was handed over.
- in order: the runner has one batch in hand at a time, so batches finish in order. MQTT hands
  over up to `mqtt_max_concurrency` batches at once, and each waits for the one before it
  before its PUBACKs go out (the order the messages came); HTTP requests are independent,
  bounded by `http_max_concurrency` (`http_api.ConcurrencyLimit`).
- retry: the runner rewinds a failed batch and tries it again after `retry.backoff_s`,
  forever (`StageRunner._rewind`). An MQTT batch is handed over again through
  `retry.until_stopped`, forever until stopped (`MqttIngest._until_handed_over`); over HTTP the
  device retries, told so by a 503 with Retry-After. The runner and the MQTT hand-over wait
  at most RETRY_MAX_WAIT_S between two attempts.
- producer renewal: after a `BrokerUnavailable` both replace the producer with
  `RenewableProducer.renew` (libs/common/service.py): the runner before its next attempt,
  ingest's `Handover.send` in the background, so an HTTP request is answered at once.
- readiness: the runner reports `pipeline` and `kafka`; ingest reports `kafka` and `mqtt`.
"""
