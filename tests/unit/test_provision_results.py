"""The results database's provisioning: PostgreSQL on the NAS node, decided from captured probe output."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import replace

import pytest

from piblade.inventory import parse_inventory
from piblade.provision import roles
from piblade.provision.facts import parse_facts
from piblade.provision.steps import (
    Change,
    ChangeKind,
    Decision,
    Ok,
    PostgresCluster,
    PostgresRole,
    scram_matches,
    scram_verifier,
)
from piblade.provision.wheelhouse import Wheelhouse
from tests.unit.test_provision import INVENTORY, NSPAWN_FACTS, PI_FACTS

#: What PostgreSQL 15 stored for `create role t login password 'pencil-secret'` (pg_authid.rolpassword).
PG15_VERIFIER = ("SCRAM-SHA-256$4096:Cz2uTC2DtJrBDJPgJU/8xw==$w+RhheMcu9gHQdG9Y9+SVb71z2W4CScl1uNjtYjznl4="
                 ":JjTxjjhQO+w+aU52xiHQrnEv2NpL+0eqF6Nq0mY5pcM=")
DATA = "/srv/data/.postgresql/15/main"


def changed(decision: Decision) -> Change:
    assert isinstance(decision, Change), decision
    return decision


def ok(decision: Decision) -> str:
    assert isinstance(decision, Ok), decision
    return decision.reason


@pytest.fixture
def ctx() -> roles.Context:
    cluster = parse_inventory(INVENTORY, source="lab.yml")
    secrets = roles.Secrets("redispw", "smbpw", "-----KEY-----\n", "ssh-ed25519 AAAA test", "pg-secret")
    return roles.Context(cluster, "redis://piblade@10.199.0.1:6390/0", secrets)


def test_scram_verifiers_are_postgresqls() -> None:
    assert scram_matches(PG15_VERIFIER, "pencil-secret")
    assert not scram_matches(PG15_VERIFIER, "pencil")
    assert not scram_matches("md5a3556571e93b0d20722ba62be61e8c2d", "pencil-secret")
    assert not scram_matches("none", "x")
    salt = base64.b64decode("Cz2uTC2DtJrBDJPgJU/8xw==")
    assert scram_verifier("pencil-secret", salt) == PG15_VERIFIER


def test_the_cluster_moves_off_the_sd_card_only_while_it_is_the_empty_default() -> None:
    step = PostgresCluster("15", DATA)
    line = "cluster 15 main 5432 {state} postgres {data} /var/log/postgresql/postgresql-15-main.log\n"
    assert ok(step.decide(line.format(state="online", data=DATA) + "databases 4")) == (
        f"PostgreSQL 15/main keeps its data in {DATA}")
    created = changed(step.decide("cluster none"))
    assert created.kind is ChangeKind.CREATE
    assert (f"pg_createcluster -d {DATA} -p 5432 --encoding UTF8 --locale C.UTF-8 --start-conf auto 15 main"
            in created.script)  # UTF-8 also on a node without a locale (else SQL_ASCII: text comes back as bytes)
    assert ("install -d -o postgres -g postgres -m 750 /srv/data/.postgresql && chmod g-s /srv/data/.postgresql"
            in created.script)
    fresh = changed(step.decide(line.format(state="down", data="/var/lib/postgresql/15/main") + "databases 3"))
    assert fresh.kind is ChangeKind.UPDATE and fresh.script.startswith("pg_dropcluster --stop 15 main && ")
    used = changed(step.decide(line.format(state="online", data="/var/lib/postgresql/15/main") + "databases 4"))
    assert "pg_dropcluster" not in used.script and "exit 1" in used.script
    result = subprocess.run(["sh", "-c", used.script], capture_output=True, text=True)
    assert result.returncode == 1
    assert "already keeps databases in /var/lib/postgresql/15/main; piblade leaves them alone" in result.stderr


def test_the_role_is_checked_against_its_verifier_and_the_password_never_leaves_the_controller() -> None:
    step = PostgresRole("15", "piblade", "pencil-secret")
    assert "pencil-secret" not in step.probe()
    assert ok(step.decide(f"role {PG15_VERIFIER}\nowner piblade")) == (
        "role piblade logs in with the cluster's password (scram-sha-256) and owns database piblade")
    for output, kind in ((f"role {PG15_VERIFIER}\nowner postgres", ChangeKind.UPDATE),
                         ("role SCRAM-SHA-256$4096:AAAA$BBBB:CCCC\nowner piblade", ChangeKind.UPDATE),
                         ("", ChangeKind.CREATE), ("down", ChangeKind.CREATE)):
        change = changed(step.decide(output))
        assert change.kind is kind, output
        assert "pencil-secret" not in change.script
        sql = change.uploads[0].data
        assert sql is not None and b"pencil-secret" not in sql
        verifier = sql.decode().split("password '", 1)[1].split("'", 1)[0]
        assert scram_matches(verifier, "pencil-secret")
        assert "template template0 encoding ''UTF8'' locale ''C.UTF-8''" in sql.decode()
        assert change.script.endswith(f'< "$STAGE/{change.uploads[0].name}" >/dev/null')


def test_the_nas_node_runs_the_results_database(ctx: roles.Context) -> None:
    steps, notes = roles.plan(ctx.cluster.node("nas1"), parse_facts(NSPAWN_FACTS + "postgres=15\n"), ctx,
                              Wheelhouse(roles.TEMPLATES, (), "m", "piblade==0.1.0"))
    by_name = {s.name: s for s in steps}
    assert notes[1] == (f"results: PostgreSQL 15 on 10.199.0.10:5432, data in {DATA}, "
                        "scram-sha-256 from 10.199.0.1, 10.199.0.10, 10.199.0.11")
    cluster = by_name["postgresql 15/main"]
    assert isinstance(cluster, PostgresCluster) and cluster.data == DATA
    hba = by_name["file /etc/postgresql/15/main/pg_hba.conf"].content.decode()
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert rules == [
        ["local", "all", "postgres", "peer"],
        ["host", "piblade", "piblade", "127.0.0.1/32", "scram-sha-256"],
        ["host", "piblade", "piblade", "::1/128", "scram-sha-256"],
        *[["host", "piblade", "piblade", f"{a}/32", "scram-sha-256"] for a in ("10.199.0.1", "10.199.0.10", "10.199.0.11")],
    ]
    assert "trust" not in hba and "0.0.0.0" not in hba
    conf = by_name["file /etc/postgresql/15/main/conf.d/piblade.conf"].content.decode()
    assert "listen_addresses = 'localhost,10.199.0.10'" in conf and "password_encryption = scram-sha-256" in conf
    dropin = by_name["file /etc/systemd/system/postgresql@15-main.service.d/piblade.conf"]
    assert b"RequiresMountsFor=/srv/data/.postgresql" in dropin.content
    assert dropin.notify == ("postgresql@15-main",)
    role = by_name["postgresql role piblade"]
    assert isinstance(role, PostgresRole) and role.password == "pg-secret"
    names = [s.name for s in steps]
    # the share's directory exists before PostgreSQL's goes into it; the role needs the server running
    assert names.index("directory /srv/data") < names.index("postgresql 15/main")
    assert names.index("service postgresql@15-main.service") < names.index("postgresql role piblade")
    for worker in ("w1",):
        assert "postgresql 15/main" not in [s.name for s in roles.plan(
            ctx.cluster.node(worker), parse_facts(PI_FACTS), ctx, Wheelhouse(roles.TEMPLATES, (), "m", "x"))[0]]


def test_the_version_is_the_installed_one_else_the_releases(ctx: roles.Context) -> None:
    assert parse_facts(NSPAWN_FACTS + "postgres=16\n").postgres_version == "16"
    assert parse_facts(PI_FACTS).postgres_version == "15"  # bookworm, not installed yet
    trixie = PI_FACTS.replace("12 (bookworm)", "13 (trixie)")
    assert parse_facts(trixie).postgres_version == "17"


def test_results_host_may_name_another_node(ctx: roles.Context) -> None:
    other = parse_inventory(INVENTORY.replace("piblade_cluster_name: lab", "piblade_cluster_name: lab\n"
                                              "    piblade_results_host: w1\n    piblade_results_port: 5433"),
                            source="lab.yml")
    ctx = replace(ctx, cluster=other)
    wheelhouse = Wheelhouse(roles.TEMPLATES, (), "m", "x")
    nas_steps, _ = roles.plan(other.node("nas1"), parse_facts(PI_FACTS), ctx, wheelhouse)
    assert "postgresql 15/main" not in [s.name for s in nas_steps]
    steps, notes = roles.plan(other.node("w1"), parse_facts(PI_FACTS), ctx, wheelhouse)
    cluster = next(s for s in steps if isinstance(s, PostgresCluster))
    assert cluster.data == "/var/lib/postgresql/15/main" and cluster.port == 5433  # Debian's own place
    assert notes[0].startswith("results: PostgreSQL 15 on 10.199.0.11:5433, data in /var/lib/postgresql/15/main")


def test_the_controllers_recorder_fills_the_results_nodes_database(ctx: roles.Context) -> None:
    from piblade.provision.controller import results_url

    assert results_url(ctx.cluster) == "postgresql://piblade@10.199.0.10:5432/piblade"
    alone = parse_inventory(INVENTORY.split("    nas:")[0], source="alone.yml")  # no NAS: the controller itself
    assert results_url(alone) == ""
