# A VMM node: QEMU, the guest kernel, guest networking (a bridge holding the node's
# interface, guests' taps join it), the image cache and the guests' directory.
include_recipe "nimbus::ssh"

bundle = node["g5kdeploy"]["bundle"]
bridge = node["nimbus"]["bridge"]
address = node["g5kdeploy"]["address"]

package "qemu-system-x86"
package "qemu-utils"
package "taktuk"

%w(/var/lib/nimbus/boot /var/lib/nimbus/vms).each do |d|
  directory d do
    mode "755"
  end
end

execute "install the guest kernel" do
  command "gunzip -c #{bundle}/files/boot/vmlinux.gz > /var/lib/nimbus/boot/vmlinux && " \
          "cp #{bundle}/files/boot/initrd.cpio.gz /var/lib/nimbus/boot/ && " \
          "cp #{bundle}/files/boot/SHA256SUMS /var/lib/nimbus/boot/"
  not_if "cmp -s #{bundle}/files/boot/SHA256SUMS /var/lib/nimbus/boot/SHA256SUMS"
end

execute "guest bridge #{bridge}" do
  command "set -e; dev=$(ip -o -4 addr show | awk '$4 ~ /^#{address}\\// {print $2}'); " \
          "gw=$(ip route show default | awk '{print $3; exit}'); " \
          "ip link add #{bridge} type bridge; ip link set #{bridge} address $(cat /sys/class/net/$dev/address); " \
          "ip link set #{bridge} up; ip addr flush dev $dev; ip link set $dev master #{bridge}; " \
          "ip addr add #{address}/#{node['nimbus']['prefix']} dev #{bridge}; ip route add default via $gw"
  not_if "ip link show #{bridge}"
end
