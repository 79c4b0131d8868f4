"""``wa-relay reshape`` (install a new cluster file beside the previous one, finish) and
the file side of ``wa-relay cluster --reshape``: exit codes, files, and the node
configs that result (a removed node still loads, from the previous file)."""

from __future__ import annotations

import nacl.signing
import trio
from click.testing import CliRunner

from relay.__main__ import main
from relay.admin.reshape import (
    install_cluster,
    local_node_files,
    prepare_local_reshape,
    watch_cluster_file,
)
from relay.config import load_cluster, load_key, load_node_config
from relay.config.cluster_files import (
    format_cluster,
    init_cluster,
    sign_cluster_file,
    write_text_atomic,
)
from relay.config.loading import load_cluster_doc
from relay.config.ring import NodeInfo
from relay.protocol.cluster import PinnedCluster


def test_reshape_installs_keeps_prev_refuses_and_finishes(tmp_path) -> None:
    files = init_cluster(tmp_path / "old", 3, 7700, admin_base_port=0)
    node_toml = files[0]
    cluster_file = tmp_path / "old" / "cluster.toml"
    new_node = NodeInfo("n4", "ws://127.0.0.1:7703",
                        bytes(nacl.signing.SigningKey.generate().verify_key))
    new_cluster = tmp_path / "new.toml"  # what an operator writes: the old nodes and n4
    new_cluster.write_text(format_cluster([*load_cluster(cluster_file), new_node]))
    before = cluster_file.read_text()
    runner = CliRunner()
    # the current file is signed: an unsigned one (clients would not follow) is refused
    unsigned = runner.invoke(main, ["reshape", "--config", str(node_toml), "--cluster",
                                    str(new_cluster)])
    assert unsigned.exit_code == 2 and "sign" in unsigned.output, unsigned.output
    assert not (tmp_path / "old" / "cluster.toml.prev").exists()
    signed = runner.invoke(main, ["sign-cluster", "--cluster", str(new_cluster), "--key",
                                  str(tmp_path / "old" / "cluster.key"), "--version", "2"])
    assert signed.exit_code == 0, signed.output

    result = runner.invoke(main, ["reshape", "--config", str(node_toml), "--cluster",
                                  str(new_cluster)])
    assert result.exit_code == 0, result.output
    assert "running node picks it up" in result.output
    assert (tmp_path / "old" / "cluster.toml.prev").read_text() == before
    assert load_cluster(cluster_file) == load_cluster(new_cluster)
    assert cluster_file.read_text() == new_cluster.read_text()  # signature kept
    assert load_cluster_doc(cluster_file) == load_cluster_doc(new_cluster) is not None
    cfg = load_node_config(tmp_path / "old" / "n2" / "node.toml")
    assert [n.id for n in cfg.previous_cluster] == ["n1", "n2", "n3"]

    again = runner.invoke(main, ["reshape", "--config", str(node_toml), "--cluster",
                                 str(new_cluster)])
    assert (again.exit_code, "already lists these nodes" in again.output) == (0, True)
    other = tmp_path / "other.toml"
    other.write_text(format_cluster(load_cluster(cluster_file)[:2]))
    refused = runner.invoke(main, ["reshape", "--config", str(node_toml), "--cluster",
                                   str(other)])
    assert refused.exit_code == 2 and "not finished" in refused.output
    usage = runner.invoke(main, ["reshape", "--config", str(node_toml)])
    assert usage.exit_code == 2

    # no admin listener here (admin_port = 0): the node cannot be asked, so only --force
    asked = runner.invoke(main, ["reshape", "--config", str(node_toml), "--finish"])
    assert asked.exit_code == 1 and "no admin listener" in asked.output, asked.output
    assert "--force" in asked.output and (tmp_path / "old" / "cluster.toml.prev").exists()
    forced_install = runner.invoke(main, ["reshape", "--config", str(node_toml), "--cluster",
                                          str(new_cluster), "--force"])
    assert forced_install.exit_code == 2  # --force goes with --finish only
    done = runner.invoke(main, ["reshape", "--config", str(node_toml), "--finish", "--force"])
    assert (done.exit_code, "removed" in done.output) == (0, True), done.output
    assert "finishing anyway (--force)" in done.output
    assert not (tmp_path / "old" / "cluster.toml.prev").exists()
    nothing = runner.invoke(main, ["reshape", "--config", str(node_toml), "--finish"])
    assert (nothing.exit_code, nothing.output) == (0, "no reshape to finish\n")


def test_local_reshape_layout(tmp_path) -> None:
    init_cluster(tmp_path, 3, 7720, tls=False)
    assert prepare_local_reshape(tmp_path, 2, 7720, "127.0.0.1", None, tls=False) == (3, 2)
    assert [p.parent.name for p in local_node_files(tmp_path)] == ["n1", "n2", "n3"]
    removed = load_node_config(tmp_path / "n3" / "node.toml")  # only in the previous file
    assert removed.id not in {n.id for n in removed.cluster}
    assert removed.node.url == "ws://127.0.0.1:7722"
    # admin ports clear of every node port of both sizes
    assert load_node_config(tmp_path / "n1" / "node.toml").admin_port == 7723
    # the same size again resumes; another size is refused until the reshape is done
    assert prepare_local_reshape(tmp_path, 2, 7720, "127.0.0.1", None, tls=False) is None
    result = CliRunner().invoke(main, ["cluster", "--nodes", "4", "--base-port", "7720",
                                       "--data", str(tmp_path), "--reshape"])
    assert result.exit_code == 2 and "not finished" in result.output


async def test_a_running_node_takes_only_an_installed_reshape(tmp_path, caplog) -> None:
    """``watch_cluster_file`` (what ``serve`` runs): a broken file and a hand edit are
    logged and ignored; a file installed by ``wa-relay reshape`` is returned, with the
    previous ring."""
    files = init_cluster(tmp_path, 2, 7740, admin_base_port=0)
    running = load_node_config(files[0])
    cluster_file = tmp_path / "cluster.toml"
    good = cluster_file.read_text()
    got: list = []

    async def watch(task_status=trio.TASK_STATUS_IGNORED) -> None:
        got.append(await watch_cluster_file(files[0], running, poll=0.01,
                                            task_status=task_status))

    async def logged(text: str) -> None:
        while text not in caplog.text:  # noqa: ASYNC110 - polling under fail_after
            await trio.sleep(0.01)

    key = nacl.signing.SigningKey.generate()
    n3 = NodeInfo("n3", "wss://127.0.0.1:7742", bytes(key.verify_key))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(watch)  # it has taken its first look at the files
            cluster_file.write_text("[[node]]\nid = \n")
            await logged("cannot be used")
            write_text_atomic(cluster_file, format_cluster([*running.cluster, n3]))
            await logged("not as a reshape")
            assert got == []
            cluster_file.write_text(good)
            new = tmp_path / "new.toml"
            new.write_text(format_cluster([*running.cluster, n3]))
            sign_cluster_file(new, load_key(tmp_path / "cluster.key"), version=2)
            assert install_cluster(cluster_file, new)
            while not got:  # noqa: ASYNC110 - polling under fail_after
                await trio.sleep(0.01)
    assert [n.id for n in got[0].cluster] == ["n1", "n2", "n3"]
    assert got[0].previous_cluster == running.cluster


async def test_a_running_node_refuses_a_reshape_file_its_clients_would_not_follow(
        tmp_path, caplog) -> None:
    """A file put in place by hand as ``wa-relay reshape`` would (the current file
    kept as ``.prev``) but unsigned, signed by another cluster key, or not newer than
    the served description (a restored backup) is logged and ignored: the node serves
    on (restarting with it would serve a description clients pinned to the cluster key
    refuse). A properly signed one is then still taken."""
    files = init_cluster(tmp_path, 2, 7750, admin_base_port=0)
    running = load_node_config(files[0])
    cluster_file = tmp_path / "cluster.toml"
    prev = tmp_path / "cluster.toml.prev"
    good = cluster_file.read_text()
    served = load_cluster_doc(cluster_file)
    assert served is not None
    version = PinnedCluster.verify(served).version
    got: list = []

    async def watch(task_status=trio.TASK_STATUS_IGNORED) -> None:
        got.append(await watch_cluster_file(files[0], running, poll=0.01,
                                            task_status=task_status))

    async def refused(times: int) -> None:
        while caplog.text.count("refused") < times and not got:  # noqa: ASYNC110 - polling under fail_after
            await trio.sleep(0.01)

    n3 = NodeInfo("n3", "wss://127.0.0.1:7752",
                  bytes(nacl.signing.SigningKey.generate().verify_key))
    new = tmp_path / "new.toml"
    cases = [(None, 0), (nacl.signing.SigningKey.generate(), version + 1),
             (load_key(tmp_path / "cluster.key"), version)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(watch)
            for i, (key, v) in enumerate(cases, 1):
                new.write_text(format_cluster([*running.cluster, n3]))
                if key is not None:
                    sign_cluster_file(new, key, version=v)
                write_text_atomic(prev, good)  # what install_cluster does, by hand
                write_text_atomic(cluster_file, new.read_text())
                await refused(i)
                assert got == []
                prev.unlink()
                write_text_atomic(cluster_file, good)
            new.write_text(format_cluster([*running.cluster, n3]))
            sign_cluster_file(new, load_key(tmp_path / "cluster.key"), version=version + 1)
            assert install_cluster(cluster_file, new)
            while not got:  # noqa: ASYNC110 - polling under fail_after
                await trio.sleep(0.01)
    assert [n.id for n in got[0].cluster] == ["n1", "n2", "n3"]


async def test_cluster_reshape_of_a_running_cluster_changes_nothing(tmp_path) -> None:
    """``wa-relay cluster --reshape`` next to the same cluster still running used to
    install the new cluster file (and ``.prev``) before its nodes failed on the held
    LMDB stores, leaving the running nodes on an "OTHER RING" (README walkthrough,
    session 6). It now refuses before writing anything, naming the holder."""
    from storage.lmdb import LmdbStorage

    root = tmp_path / "c"
    init_cluster(root, 3, 7720, admin_base_port=0)
    before = (root / "cluster.toml").read_text()
    async with LmdbStorage.open(root / "n1" / "data"):  # n1 is running
        result = CliRunner().invoke(main, [
            "cluster", "--nodes", "5", "--base-port", "7720", "--data", str(root),
            "--reshape"])
    assert result.exit_code == 1, result.output
    assert "is running" in result.output and "nothing was changed" in result.output
    assert (root / "cluster.toml").read_text() == before
    assert not (root / "cluster.toml.prev").exists()
