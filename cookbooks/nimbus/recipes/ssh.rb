# The cloud's own key: its service node (which alone receives the private part, in the
# bundle's secrets/) reaches the cloud's VMMs with it; every node of the cloud authorizes it.
require "shellwords"
bundle = node["g5kdeploy"]["bundle"]
authorized = Shellwords.escape(node["nimbus"]["authorized_key"])

directory "/root/.ssh" do
  mode "700"
end

execute "install the cloud key" do
  command "install -m 600 #{bundle}/secrets/nimbus_id /root/.ssh/nimbus_id"
  only_if "test -f #{bundle}/secrets/nimbus_id"
  not_if "cmp -s #{bundle}/secrets/nimbus_id /root/.ssh/nimbus_id"
end

execute "authorize the cloud key" do
  command "echo #{authorized} >> /root/.ssh/authorized_keys"
  not_if "grep -qxF #{authorized} /root/.ssh/authorized_keys"
end

%w(/var/lib/nimbus /var/lib/nimbus/cache /var/lib/nimbus/incoming /var/log/nimbus).each do |d|
  directory d do
    mode "755"
  end
end
