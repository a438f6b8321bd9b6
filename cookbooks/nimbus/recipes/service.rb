# The cloud service node: EC2 API + scheduler, image repository, context broker.
include_recipe "nimbus::ssh"

package "taktuk"
package "openssh-client"

directory "/etc/nimbus" do
  mode "755"
end

directory "/var/lib/nimbus/repository" do
  mode "755"
end

template "/etc/nimbus/cloud.json" do
  source "cloud.json.erb"
  mode "600"
  notifies :run, "execute[restart nimbus-api]"
  notifies :run, "execute[restart nimbus-broker]"
end

%w(api broker).each do |role|
  template "/etc/init.d/nimbus-#{role}" do
    source "nimbus-daemon.erb"
    mode "755"
    variables(role: role, config: "/etc/nimbus/cloud.json")
    notifies :run, "execute[restart nimbus-#{role}]"
  end

  execute "start nimbus-#{role}" do
    command "/etc/init.d/nimbus-#{role} start"
    not_if "/etc/init.d/nimbus-#{role} status"
  end

  execute "restart nimbus-#{role}" do
    command "/etc/init.d/nimbus-#{role} restart"
    action :nothing
  end
end
