# A VMM node of a cloud (QEMU and the guest kernel come from g5kdeploy::qemu): guest
# networking (g5kdeploy::bridge, before it in the role), the image cache.
include_recipe "nimbus::ssh"

package "taktuk"

# The chain daemon (g5kdeploy.nimbus.chain): receives images from the repository, keeps
# them and passes them on to the next VMM; answers which image the cache holds.
directory "/etc/nimbus" do
  mode "755"
end

template "/etc/nimbus/chain.json" do
  source "chain.json.erb"
  mode "600"
  notifies :run, "execute[restart nimbus-chain]"
end

template "/etc/init.d/nimbus-chain" do
  source "nimbus-daemon.erb"
  mode "755"
  variables(role: "chain", config: "/etc/nimbus/chain.json")
  notifies :run, "execute[restart nimbus-chain]"
end

execute "start nimbus-chain" do
  command "/etc/init.d/nimbus-chain start"
  not_if "/etc/init.d/nimbus-chain status"
end

execute "restart nimbus-chain" do
  command "/etc/init.d/nimbus-chain restart"
  action :nothing
end
