# A Shrinker VMM: zstd for its agents' compressed chunks, and the directory its migrations'
# keys are copied into (root only; on tmpfs, never on disk). Keys are per migration and per
# site, made by the frontend for each use.
package "python3-zstandard"

directory "/run/g5kdeploy-shrinker" do
  mode "700"
  owner "root"
  group "root"
end
