# A VMM node: QEMU, the guest kernel and initramfs (shipped in the bundle, built on
# the frontend from Debian packages), and the guests' directory.
bundle = node["g5kdeploy"]["bundle"]

package "qemu-system-x86"
package "qemu-utils"

%w(/var/lib/g5kdeploy /var/lib/g5kdeploy/boot /var/lib/g5kdeploy/vms).each do |d|
  directory d do
    mode "755"
  end
end

execute "install the guest kernel" do
  command "gunzip -c #{bundle}/files/boot/vmlinux.gz > /var/lib/g5kdeploy/boot/vmlinux && " \
          "cp #{bundle}/files/boot/initrd.cpio.gz /var/lib/g5kdeploy/boot/ && " \
          "cp #{bundle}/files/boot/SHA256SUMS /var/lib/g5kdeploy/boot/"
  not_if "cmp -s #{bundle}/files/boot/SHA256SUMS /var/lib/g5kdeploy/boot/SHA256SUMS"
end
