"""qkd-gateway: QKD + ML-KEM + X25519 session keys for WireGuard and IPsec tunnels.

Package layout (dependencies point downwards only)::

    cli ─► daemon ─► protocol   pure peer state machine + thin TCP transport
                  ├► kms        ETSI GS QKD 014 / SKIP clients, key pool, embedded KME network
                  ├► dataplane  WireGuard (netlink, UAPI), XFRM
                  └► telemetry  structlog, MQTT, metrics
    config      YAML -> validated models; imports nothing else of the project
    keymaterial the Secret type every layer uses for key bytes
"""

__version__ = "0.1.0"
