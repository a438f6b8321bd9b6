# The site's Redis: state of the site's cloud (persisted: redis_persist), or Shrinker's page
# index (flushed every trial: not persisted).
package "redis-server"
package "python3-redis"

template "/etc/redis/g5kdeploy.conf" do
  source "redis.conf.erb"
  mode "644"
  notifies :run, "execute[restart redis]"
end

execute "start redis" do
  command "redis-server /etc/redis/g5kdeploy.conf"
  not_if "redis-cli -p #{node['g5kdeploy']['redis_port']} ping | grep -q PONG"
end

execute "restart redis" do
  command "redis-cli -p #{node['g5kdeploy']['redis_port']} shutdown nosave; redis-server /etc/redis/g5kdeploy.conf"
  action :nothing
end
