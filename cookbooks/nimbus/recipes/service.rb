# The cloud service node: EC2 API + scheduler, image repository, context broker, and
# Cumulus (Swift with s3api: the S3 store; g5kdeploy.nimbus.cumulus writes its configuration).
include_recipe "nimbus::ssh"

%w(taktuk openssh-client python3-cryptography swift swift-proxy swift-object swift-container
   swift-account).each { |p| package p }

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
  notifies :run, "execute[restart nimbus-cumulus]"
end

%w(api broker cumulus).each do |role|
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
