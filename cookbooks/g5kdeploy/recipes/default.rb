# The g5kdeploy sources (standard-library services run from them) in /opt/g5kdeploy/src.
# The wrapper ships them in the bundle as src.tar.gz with its sha256.
bundle = node["g5kdeploy"]["bundle"]

package "python3"
package "python3-redis"      # the cloud and Shrinker agents talk to the site's Redis

directory "/etc/g5kdeploy" do
  mode "700"
end

if node["g5kdeploy"]["redis_password"]
  # the site's Redis password, for its clients on this node (redis-cli reads it as REDISCLI_AUTH)
  file "/etc/g5kdeploy/redis.pass" do
    content node["g5kdeploy"]["redis_password"]
    mode "600"
  end
end

directory "/opt/g5kdeploy" do
  mode "755"
end

execute "install g5kdeploy sources" do
  command "rm -rf /opt/g5kdeploy/src && mkdir /opt/g5kdeploy/src && " \
          "tar -xzf #{bundle}/src.tar.gz -C /opt/g5kdeploy/src && cp #{bundle}/src.sha256 /opt/g5kdeploy/src.sha256"
  not_if "cmp -s #{bundle}/src.sha256 /opt/g5kdeploy/src.sha256"
end
