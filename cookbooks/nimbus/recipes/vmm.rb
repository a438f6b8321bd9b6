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
