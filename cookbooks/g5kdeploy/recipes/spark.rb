# Apache Spark standalone, the MapReduce engine Resilin runs (thesis ch. 4 ran Hadoop, which
# is in neither Debian nor PyPI): Debian's OpenJDK, PyPI's pyspark (Spark and its jars) in
# /opt/g5kdeploy/spark, boto3 for the steps' S3 reads and writes. g5kdeploy.resilin.spark
# starts the daemons; this installs what they run.
package "openjdk-17-jre-headless"
package "python3-boto3"
package "python3-pip"

version = node["g5kdeploy"]["pyspark"]
execute "install pyspark #{version}" do
  command "python3 -m pip install --quiet --no-deps --break-system-packages --target /opt/g5kdeploy/spark " \
          "pyspark==#{version} py4j==#{node['g5kdeploy']['py4j']}"
  not_if "test -f /opt/g5kdeploy/spark/pyspark-#{version}.dist-info/METADATA"
end
