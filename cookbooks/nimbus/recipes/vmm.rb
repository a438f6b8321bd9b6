# A VMM node of a cloud (QEMU and the guest kernel come from g5kdeploy::qemu): guest
# networking (a bridge holding the node's interface, guests' taps join it), the image cache.
include_recipe "nimbus::ssh"

bridge = node["nimbus"]["bridge"]
address = node["g5kdeploy"]["address"]

package "taktuk"

execute "guest bridge #{bridge}" do
  command "set -e; dev=$(ip -o -4 addr show | awk '$4 ~ /^#{address}\\// {print $2}'); " \
          "gw=$(ip route show default | awk '{print $3; exit}'); " \
          "ip link add #{bridge} type bridge; ip link set #{bridge} address $(cat /sys/class/net/$dev/address); " \
          "ip link set #{bridge} up; ip addr flush dev $dev; ip link set $dev master #{bridge}; " \
          "ip addr add #{address}/#{node['nimbus']['prefix']} dev #{bridge}; ip route add default via $gw"
  not_if "ip link show #{bridge}"
end

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
