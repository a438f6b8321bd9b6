# The cloud's own key: the service reaches its VMMs with it.
bundle = node["g5kdeploy"]["bundle"]

directory "/root/.ssh" do
  mode "700"
end

execute "install the cloud key" do
  command "install -m 600 #{bundle}/files/nimbus_id /root/.ssh/nimbus_id && " \
          "install -m 644 #{bundle}/files/nimbus_id.pub /root/.ssh/nimbus_id.pub"
  not_if "cmp -s #{bundle}/files/nimbus_id /root/.ssh/nimbus_id"
end

execute "authorize the cloud key" do
  command "cat #{bundle}/files/nimbus_id.pub >> /root/.ssh/authorized_keys"
  not_if "grep -qF \"$(cat #{bundle}/files/nimbus_id.pub)\" /root/.ssh/authorized_keys"
end

%w(/var/lib/nimbus /var/lib/nimbus/cache /var/lib/nimbus/incoming /var/log/nimbus).each do |d|
  directory d do
    mode "755"
  end
end
