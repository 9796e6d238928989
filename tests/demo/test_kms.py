"""The KME network runs in the kms namespace and every site reaches it over mutual TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.demo import (
    KMS_ADDRESS,
    KmsUnreachable,
    LabProcessError,
    ProcessSet,
    Topology,
    gateway_argv,
    kme_status,
    materialize,
    plan_lab,
    wait_for_kme,
)


@pytest.mark.netns
async def test_site_reads_kme_status_over_mutual_tls(topo: Topology, tmp_path: Path) -> None:
    plan = plan_lab(topo.prefix, tmp_path, 2, 10)
    materialize(plan)
    hub, spoke = plan.sites
    host = str(KMS_ADDRESS.ip)
    tls = {"ca_file": plan.pki_dir / "ca.crt"}
    async with ProcessSet() as procs:
        kms = await procs.start("kms-sim", topo.kms.netns,
                                gateway_argv("kms-sim", *plan.kms_sim_args(),
                                             "--log-format", "json"), plan.kms_log_path)
        status = await wait_for_kme(
            spoke.netns, host, spoke.kme_port, deadline_s=15, kme_id=spoke.kme_id,
            slave_sae_id=hub.sae_id, cert_file=plan.pki_dir / f"{spoke.sae_id}.crt",
            key_file=plan.pki_dir / f"{spoke.sae_id}.key", **tls)
        assert status["source_KME_ID"] == "kme-cluj-napoca"
        assert status["target_KME_ID"] == "kme-bucharest"
        assert status["master_SAE_ID"] == "sae-cluj-napoca"
        assert status["slave_SAE_ID"] == "sae-bucharest"
        assert status["stored_key_count"] == plan.kms.max_key_count
        # The KME ID is confirmed from the certificate: the wrong expectation is refused.
        with pytest.raises(KmsUnreachable, match="kme-bucharest"):
            await kme_status(hub.netns, host, spoke.kme_port, kme_id="kme-bucharest",
                             slave_sae_id=spoke.sae_id,
                             cert_file=plan.pki_dir / f"{hub.sae_id}.crt",
                             key_file=plan.pki_dir / f"{hub.sae_id}.key", **tls)
        # Without the KMS path (its WAN link cut) the probe times out with a clear message.
        topo.set_wan_link("kms", False)
        with pytest.raises(KmsUnreachable, match="did not answer from namespace"):
            await kme_status(hub.netns, host, hub.kme_port, kme_id=hub.kme_id,
                             slave_sae_id=spoke.sae_id, timeout=0.5,
                             cert_file=plan.pki_dir / f"{hub.sae_id}.crt",
                             key_file=plan.pki_dir / f"{hub.sae_id}.key", **tls)
        topo.set_wan_link("kms", True)
        assert kms.running()
    assert "kms_sim_ready" in plan.kms_log_path.read_text()


@pytest.mark.netns
async def test_wait_gives_up_at_the_deadline_or_when_told(topo: Topology,
                                                          tmp_path: Path) -> None:
    plan = plan_lab(topo.prefix, tmp_path, 2, 10)
    materialize(plan)
    hub = plan.sites[0]
    args = {"kme_id": hub.kme_id, "slave_sae_id": "sae-cluj-napoca",
            "ca_file": plan.pki_dir / "ca.crt", "cert_file": plan.pki_dir / f"{hub.sae_id}.crt",
            "key_file": plan.pki_dir / f"{hub.sae_id}.key"}
    # Nothing listens in the kms namespace: refused at once, retried until the deadline.
    with pytest.raises(KmsUnreachable, match=r"Connect call failed.*gave up after 0.6 s"):
        await wait_for_kme(hub.netns, str(KMS_ADDRESS.ip), 8400, deadline_s=0.6, **args)
    calls: list[int] = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise LabProcessError("kms-sim exited with code 1")

    with pytest.raises(LabProcessError, match="kms-sim exited"):
        await wait_for_kme(hub.netns, str(KMS_ADDRESS.ip), 8400, deadline_s=30, check=check,
                           **args)
    assert len(calls) == 2
