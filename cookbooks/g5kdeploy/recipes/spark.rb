# Apache Spark standalone, the MapReduce engine Resilin runs (thesis ch. 4 ran Hadoop, which
# is in neither Debian nor PyPI): Debian's OpenJDK, PyPI's pyspark (Spark and its jars) in
# /opt/g5kdeploy/spark, boto3 for the steps' S3 reads and writes, the user `resilin` who runs
# them. g5kdeploy.resilin.spark starts the daemons; this installs what they run.
package "openjdk-17-jre-headless"
package "python3-boto3"
package "python3-pip"

# the engine's daemons and the job flows' programs run as this user, never as root
execute "user resilin" do
  command "useradd --system --home-dir /var/lib/g5kdeploy-resilin --no-create-home --shell /usr/sbin/nologin resilin"
  not_if "id resilin"
end

directory "/var/lib/g5kdeploy-resilin" do
  mode "755"
end

version = node["g5kdeploy"]["pyspark"]
execute "install pyspark #{version}" do
  command "python3 -m pip install --quiet --no-deps --break-system-packages --target /opt/g5kdeploy/spark " \
          "pyspark==#{version} py4j==#{node['g5kdeploy']['py4j']}"
  not_if "test -f /opt/g5kdeploy/spark/pyspark-#{version}.dist-info/METADATA"
end

# the class-data-sharing archive its JVMs start from (g5kdeploy.resilin.cds), made by this JVM
execute "Spark's class-data-sharing archive" do
  command "PYTHONPATH=/opt/g5kdeploy/src python3 -m g5kdeploy.resilin.cds"
  not_if "PYTHONPATH=/opt/g5kdeploy/src python3 -m g5kdeploy.resilin.cds --check"
end
