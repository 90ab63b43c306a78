"""Tools run by hand, not by `make bench`: interleaved A/B runs of a stage (`ab`, `mqtt_ab`) and
profiles of a pure step or a running service (`profile`, `profile_service`). Their profile
dumps go to bench/results/profiles/, which git ignores."""
