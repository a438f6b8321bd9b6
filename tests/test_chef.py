"""The configuration wrapper without nodes: run_lists, attributes, the bundle, change counts."""
import hashlib
import io
import tarfile

import pytest

from g5kdeploy import chef
from g5kdeploy.errors import UserError


def test_run_list_to_recipe_files():
    assert chef.recipes(["recipe[g5kdeploy]", "recipe[nimbus::vmm]"]) == [
        "g5kdeploy/recipes/default.rb", "nimbus/recipes/vmm.rb"]
    with pytest.raises(UserError, match="recipe\\[cookbook::recipe\\]"):
        chef.recipes(["role[nimbus-vmm]"])


def test_every_role_names_existing_recipes():
    for path in (chef.COOKBOOKS / "roles").glob("*.json"):
        for recipe in chef.recipes(chef.role(path.stem)["run_list"]):
            assert (chef.COOKBOOKS / recipe).is_file(), recipe


def test_unknown_role():
    with pytest.raises(UserError, match="unknown role 'nope'"):
        chef.role("nope")


def test_attributes_merge_deeply():
    base = {"nimbus": {"api_port": 8773, "bridge": "br0"}, "g5kdeploy": {"bundle": "/b"}}
    assert chef.merge(base, {"nimbus": {"bridge": "br1", "site": "rennes"}}) == {
        "nimbus": {"api_port": 8773, "bridge": "br1", "site": "rennes"}, "g5kdeploy": {"bundle": "/b"}}


def test_changed_counts_resources_not_attributes():
    log = (" INFO :   directory[/opt/g5kdeploy] exist will change from 'false' to 'true'\n"
           " INFO :   directory[/opt/g5kdeploy] mode will be '0755'\n"
           " INFO :   execute[start redis] executed will change from 'false' to 'true'\n"
           " INFO :   template[/etc/redis/g5kdeploy.conf] content will change from 'x' to 'y'\n")
    assert chef.changed("itamae", log) == 3
    assert chef.changed("itamae", " INFO : Recipe: x.rb\n") == 0
    assert chef.changed("chef-solo", "Chef Client finished, 4/19 resources updated in 03 seconds") == 4


def test_bundle_has_itamae_links_and_reproducible_sources(tmp_path):
    out = chef.bundle({"extra.txt": chef.COOKBOOKS / "roles" / "nimbus-vmm.json"}, tmp_path / "b.tar")
    with tarfile.open(out) as tar:
        names = tar.getnames()
        link = tar.getmember("cookbooks/nimbus/recipes/nimbus::ssh.rb")
        assert link.issym() and link.linkname == "ssh.rb"
        template = tar.getmember("cookbooks/nimbus/recipes/cloud.json.erb")
        assert template.linkname == "../templates/default/cloud.json.erb"
        assert {"files/extra.txt", "solo.rb", "src.tar.gz", "src.sha256"} <= set(names)
        assert not any(n.startswith(("nodes/", "secrets/")) for n in names)      # nothing of any node
        src = tar.extractfile("src.tar.gz").read()
        assert tar.extractfile("src.sha256").read().decode().strip() == hashlib.sha256(src).hexdigest()
    assert src == chef.sources()          # same sources, same bytes: a second converge changes nothing
    with tarfile.open(fileobj=io.BytesIO(src)) as inner:
        assert "g5kdeploy/nimbus/api.py" in inner.getnames()
        assert not any("__pycache__" in n for n in inner.getnames())


def test_a_node_archive_holds_only_that_nodes_json_and_secrets_0600(tmp_path):
    key = tmp_path / "k"
    key.write_text("private")
    out = chef.node_archive("n1", {"nimbus": {"credentials": {"AKID": "s"}}}, {"nimbus_id": key}, tmp_path / "n1.tar")
    assert out.stat().st_mode & 0o777 == 0o600
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["nodes/n1.json", "secrets/nimbus_id"]
        assert all(m.mode == 0o600 for m in tar.getmembers())
        assert tar.extractfile("secrets/nimbus_id").read() == b"private"


def test_unknown_runner():
    with pytest.raises(UserError, match="itamae, chef-solo"):
        chef.apply({}, runner="puppet")
