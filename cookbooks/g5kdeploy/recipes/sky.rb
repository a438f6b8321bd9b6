# A sky-computing node (thesis §3.4): the Dask scheduler or a worker, and NCBI BLAST+.
# The platform (g5kdeploy.sky.platform) starts the daemons; this installs what they run.
package "ncbi-blast+"
package "python3-distributed"

directory node["g5kdeploy"]["sky_root"] do
  mode "755"
end
