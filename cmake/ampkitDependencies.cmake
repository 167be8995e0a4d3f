# Finds ampkit's dependencies and wraps them in two INTERFACE targets:
#   ampkit_deps::host  Eigen 3.4, nlohmann_json, stb (headers), toml++ (headers)
#   ampkit_deps::cuda  cudart, cuBLAS, cuBLASLt, cuDNN 9, NCCL 2   (ampkit_find_cuda_libraries())
# Used both by the source tree and by the installed ampkitConfig.cmake, so a consumer finds the
# same things the tests were built with.
include_guard(GLOBAL)
include(CMakeFindDependencyMacro)

macro(_ampkit_find_dep name)
  if(CMAKE_FIND_PACKAGE_NAME)     # inside ampkitConfig.cmake
    find_dependency(${name} ${ARGN})
  else()
    find_package(${name} ${ARGN} REQUIRED)
  endif()
endmacro()

_ampkit_find_dep(Eigen3 3.4 NO_MODULE)
_ampkit_find_dep(nlohmann_json 3.10)

# stb and toml++ are used header-only; their headers may live in a system folder or in a folder
# named by AMPKIT_EXTRA_INCLUDE (the GPU machine has neither package installed).
find_path(AMPKIT_STB_INCLUDE_DIR stb_image.h
  HINTS ENV AMPKIT_EXTRA_INCLUDE ${AMPKIT_EXTRA_INCLUDE} PATH_SUFFIXES stb)
find_path(AMPKIT_TOMLPP_INCLUDE_DIR toml++/toml.h
  HINTS ENV AMPKIT_EXTRA_INCLUDE ${AMPKIT_EXTRA_INCLUDE})
foreach(_v AMPKIT_STB_INCLUDE_DIR AMPKIT_TOMLPP_INCLUDE_DIR)
  if(NOT ${_v})
    message(FATAL_ERROR "ampkit: ${_v} not found. On Debian/Ubuntu: apt-get install libstb-dev "
                        "libtomlplusplus-dev; elsewhere point AMPKIT_EXTRA_INCLUDE at a folder "
                        "holding stb/stb_image.h and toml++/toml.h.")
  endif()
endforeach()

if(NOT TARGET ampkit_deps::host)
  add_library(ampkit_deps::host INTERFACE IMPORTED)
  target_link_libraries(ampkit_deps::host INTERFACE Eigen3::Eigen nlohmann_json::nlohmann_json)
  target_include_directories(ampkit_deps::host INTERFACE
    ${AMPKIT_STB_INCLUDE_DIR} ${AMPKIT_TOMLPP_INCLUDE_DIR})
  # toml++ is used header-only (Debian also ships a compiled libtomlplusplus; we don't link it).
  target_compile_definitions(ampkit_deps::host INTERFACE TOML_HEADER_ONLY=1)
  find_package(Threads REQUIRED)
  target_link_libraries(ampkit_deps::host INTERFACE Threads::Threads)
endif()

# cuDNN and NCCL ship no CMake or pkg-config files. They sit wherever the CUDA toolkit or a pip
# wheel put them; CUDNN_ROOT / NCCL_ROOT (environment or cache) pick a specific copy. pip wheels
# carry only the soname (libcudnn.so.9), hence the explicit names.
function(ampkit_find_cuda_libraries)
  if(TARGET ampkit_deps::cuda)
    return()
  endif()
  find_package(CUDAToolkit 12.0 REQUIRED)
  find_path(AMPKIT_CUDNN_INCLUDE_DIR cudnn.h
    HINTS ${CUDNN_ROOT} ENV CUDNN_ROOT ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
  find_library(AMPKIT_CUDNN_LIBRARY NAMES cudnn libcudnn.so.9 NAMES_PER_DIR
    HINTS ${CUDNN_ROOT} ENV CUDNN_ROOT ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
  find_path(AMPKIT_NCCL_INCLUDE_DIR nccl.h
    HINTS ${NCCL_ROOT} ENV NCCL_ROOT ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
  find_library(AMPKIT_NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
    HINTS ${NCCL_ROOT} ENV NCCL_ROOT ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
  if(NOT AMPKIT_CUDNN_INCLUDE_DIR OR NOT AMPKIT_CUDNN_LIBRARY)
    message(FATAL_ERROR "ampkit: cuDNN 9 not found (cudnn.h / libcudnn). Install it beside the CUDA "
                        "toolkit (e.g. apt-get install libcudnn9-dev-cuda-13 or pip install "
                        "nvidia-cudnn-cu13) and set CUDNN_ROOT to its folder, or configure with "
                        "-DAMPKIT_ENABLE_CUDA=OFF for the host backend only.")
  endif()
  if(NOT AMPKIT_NCCL_INCLUDE_DIR OR NOT AMPKIT_NCCL_LIBRARY)
    message(FATAL_ERROR "ampkit: NCCL 2 not found (nccl.h / libnccl). Install it (apt-get install "
                        "libnccl-dev or pip install nvidia-nccl-cu13) and set NCCL_ROOT to its "
                        "folder, or configure with -DAMPKIT_ENABLE_CUDA=OFF.")
  endif()
  add_library(ampkit_deps::cuda INTERFACE IMPORTED GLOBAL)
  target_include_directories(ampkit_deps::cuda INTERFACE
    ${AMPKIT_CUDNN_INCLUDE_DIR} ${AMPKIT_NCCL_INCLUDE_DIR})
  target_link_libraries(ampkit_deps::cuda INTERFACE CUDA::cudart CUDA::cublas CUDA::cublasLt
    ${AMPKIT_CUDNN_LIBRARY} ${AMPKIT_NCCL_LIBRARY})
  message(STATUS "ampkit: cuDNN ${AMPKIT_CUDNN_LIBRARY}, NCCL ${AMPKIT_NCCL_LIBRARY}")
endfunction()
