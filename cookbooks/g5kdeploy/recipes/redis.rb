# The site's Redis: state of the site's cloud (persisted: redis_persist; local clients only),
# or Shrinker's page index (flushed every trial; reached by the site's VMMs: redis_remote).
# A password always (redis_password); the config holding it is root's alone.
raise "g5kdeploy::redis needs node['g5kdeploy']['redis_password']" unless node["g5kdeploy"]["redis_password"]
package "redis-server"
package "python3-redis"

pidfile = "/run/redis-g5kdeploy.pid"
running = "kill -0 $(cat #{pidfile} 2>/dev/null) 2>/dev/null"

template "/etc/redis/g5kdeploy.conf" do
  source "redis.conf.erb"
  mode "600"
  notifies :run, "execute[restart redis]"
end

execute "start redis" do
  command "redis-server /etc/redis/g5kdeploy.conf"
  not_if running
end

execute "restart redis" do
  command "pid=$(cat #{pidfile} 2>/dev/null) && kill $pid && while kill -0 $pid 2>/dev/null; do sleep 0.05; done; " \
          "redis-server /etc/redis/g5kdeploy.conf"
  action :nothing
end
