# The guests' bridge on a VMM node: it takes over the node's interface and address, so that
# guests' taps that join it are on the site's network.
bridge = node["g5kdeploy"]["bridge"] || "br0"
address = node["g5kdeploy"]["address"]

execute "guest bridge #{bridge}" do
  command "set -e; dev=$(ip -o -4 addr show | awk '$4 ~ /^#{address}\\// {print $2}'); " \
          "cidr=$(ip -o -4 addr show dev $dev | awk '{print $4; exit}'); " \
          "gw=$(ip route show default | awk '{print $3; exit}'); " \
          "ip link add #{bridge} type bridge; ip link set #{bridge} address $(cat /sys/class/net/$dev/address); " \
          "ip link set #{bridge} up; ip addr flush dev $dev; ip link set $dev master #{bridge}; " \
          "ip addr add $cidr dev #{bridge}; ip route add default via $gw"
  not_if "ip link show #{bridge}"
end
