"""The benchmark harness (`make bench`): the pipeline's throughput, cost and latency, each figure
beside a reference measured in the same run on the same machine."""
