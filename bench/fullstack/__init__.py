"""The full-stack rekey benchmark (issue 12): two real ``qkd-gateway run`` daemons with the
embedded KME network, side by side with a strongSwan charon pair, and the crypto floor; see
bench/bench_fullstack.py for the entry point and docs/performance.md for the figures."""
