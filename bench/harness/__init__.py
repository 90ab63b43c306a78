"""What every benchmark step and research tool stands on: the run's context and plan, the data
set, the statistics, the report and plot, Mosquitto's C clients. The processes, names, offsets
and stack addresses are in bench/infra.py."""
